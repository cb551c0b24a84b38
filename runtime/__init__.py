"""The torch-free ground floor: image I/O, face detection, alignment and paste-back.

Imported as ``edgecloak.runtime``. Only numpy, OpenCV, Pillow and onnxruntime are allowed here,
so that it installs on Jetson- and phone-class devices.
"""
