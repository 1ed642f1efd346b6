"""Licence of every face component, for ``likeness doctor`` or an operator's notice.

Print :data:`LICENCES` before deploying. The default landmark backend, ``"mediapipe"``,
is Apache-2.0; the optional ``"dlib"`` backend's 68-point model may not be used in a
commercial product. The identity embedding (``"dlib-5point"``, ``"dlib-embedding"``) is
used with either.

MediaPipe (``"mediapipe"``, the default): the ``mediapipe`` wheels 1.2.2 and 0.10.35
ship no face model (their Tasks API downloads ``face_landmarker.task`` at run time, which
this project does not do). The last wheel that bundled the face models, 0.10.21, requires
``numpy<2`` and is never installed: set-up downloads it with ``--no-deps``, takes the two
``.tflite`` files out, checks their sha256 and keeps them in the data dir's models folder
(:mod:`avatar.face.mediapipe_models`); ``ai-edge-litert`` runs them.
"""

from __future__ import annotations

LICENCES: dict[str, str] = {
    "mediapipe": (
        "engine: ai-edge-litert 2.3.0 (LiteRT, Apache-2.0). Models: "
        "face_detection_short_range.tflite (BlazeFace) and face_landmark.tflite (the "
        "468-point face mesh), from the mediapipe 0.10.21 wheel, Apache-2.0 (Copyright "
        "Google LLC; Google's model cards describe their training data). Commercial use "
        "allowed under Apache-2.0's terms: keep the licence text and notices."
    ),
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
