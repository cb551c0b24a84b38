"""The torch-free device side: everything needed to cloak a photo from a bundle.

Imported as ``edgecloak.runtime``. Only numpy, OpenCV, Pillow and an engine (onnxruntime;
TensorRT or torch when present) are allowed here, so that it installs on Jetson- and phone-class
devices; a test proves it runs with torch and the export code blocked.

Modules: ``image_io`` (safe decode, atomic writes), ``detect`` (MTCNN), ``align`` and
``face_region`` (geometry), ``warp`` (numpy bilinear sampling and its adjoint), ``bundle``
(verified bundles), ``backends`` (engines behind one interface), ``tipim`` (the loop),
``protector`` (faces of a photo), ``config``/``diversity``/``mmd``/``targets`` (shared with the
torch oracle the tests check the loop against, so both compute the same thing).
"""
