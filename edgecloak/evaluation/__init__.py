"""Measured protection: identification metrics, image quality and the evaluation protocol.

Torch-free (numpy + OpenCV). ``metrics`` scores galleries and images; ``protocol`` splits the
photos so that no photo used to optimise towards a target sits in the gallery.
"""
