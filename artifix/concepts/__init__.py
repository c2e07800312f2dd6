"""Concepts: the segmenter and the dissection of a layer's units against its classes."""
