"""A small CLIP trained from scratch on canonical views of procedural multi-view objects: the stand-in for a
pre-trained CLIP (weights can't be downloaded here) whose viewpoint-OOD weakness Omniview-Tuning addresses."""
