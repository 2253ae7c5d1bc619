"""The PinRec model, its training, generation, evaluation and artifacts; the data side is in `data/`."""
