"""Licence of every face component, for ``likeness doctor`` or an operator's notice.

Print :data:`LICENCES` before deploying: the default 68-point landmark model may not be
used in a commercial product (see ``"dlib"``).

About MediaPipe (checked, not offered): the Apache-2.0 ``mediapipe`` wheels 1.2.2
(43 MB, a 127 MB ``libmediapipe.so`` and Python wrappers) and 0.10.35 (12 MB) ship no
face model at all (no .tflite, .task or .binarypb file; the Tasks API expects
``face_landmarker.task`` to be downloaded at run time, which this project does not do).
The last wheel that bundled the face mesh models offline (0.10.21, 36 MB,
``mediapipe/modules/face_landmark/*.tflite``) requires ``numpy<2`` and ``protobuf<5`` and
pulls ``jax`` and ``opencv-contrib-python``, which conflict with this project's numpy 2
and opencv-python-headless. So there is no ``mediapipe`` backend.
"""

from __future__ import annotations

LICENCES: dict[str, str] = {
    "dlib": (
        "engine: dlib 20 (Boost Software License 1.0). Detector: dlib's built-in HOG "
        "frontal face detector, trained on Labeled Faces in the Wild images (part of dlib, "
        "Boost). Landmarks: shape_predictor_68_face_landmarks.dat (face-recognition-models "
        "0.3.0, the package is MIT; the model file was released by Davis King without "
        "restriction, BUT it was trained on iBUG 300-W, whose licence excludes commercial "
        "use, and its creators asked that the model not be used in commercial products). "
        "NOT FOR COMMERCIAL USE without a licence from the data set's owners "
        "(Imperial College London) or a replacement model."
    ),
    "dlib-5point": (
        "shape_predictor_5_face_landmarks.dat (face-recognition-models 0.3.0): trained on "
        "dlib's own 5-point data set (7198 web images its author labelled); the model is "
        "released by Davis King into the public domain, with no use restriction noted. "
        "Gives alignment and embeddings, not pose or mouth shapes."
    ),
    "dlib-embedding": (
        "dlib_face_recognition_resnet_model_v1.dat (face-recognition-models 0.3.0): a "
        "ResNet trained by Davis King on about 3 million faces (FaceScrub, VGG Face and "
        "images from the web), released by him into the public domain; the training sets "
        "have their own (Creative Commons) terms: have them reviewed before commercial use."
    ),
}
