"""Data: the shapes benchmark, user image folders and the OpenMoji set. Uses nothing else of ours."""
