"""Finding BMCs and agents on the network."""
