"""The floor the library stands on: the progress and Cancel hook, files written whole, image tensors
and image files, the process's memory. Imports nothing else of the project."""
