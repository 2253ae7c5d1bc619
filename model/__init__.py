"""Data, the PinRec model, training, generation and evaluation."""
