"""The generator: turns one stream's frames into tasks under the stream's current decision."""
