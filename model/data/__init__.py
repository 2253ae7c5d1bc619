"""The data side of the model: event logs and their sources (public datasets, the synthetic world), the item
catalog and user sequences, splits and training batches, surface contexts, and `prepare`, which turns an
event log into what training and evaluation read."""
