"""Graded checks, one module per lesson (``NN_topic.py``), each with a list ``EXERCISES``."""
