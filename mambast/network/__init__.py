"""The architecture and its weights: the configuration read off a checkpoint, the VSS blocks, the
encodings the stages hand each other, the MambaST model, reading, checking and loading weights,
and random weights in the official layout."""
