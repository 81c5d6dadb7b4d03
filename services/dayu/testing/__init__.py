"""Tools for testing the mesh from outside (the test suite and hack/ scripts); no component imports them.
They need the dev extra (hypothesis)."""
