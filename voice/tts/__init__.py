"""Text-to-speech backends behind one Protocol (``voice.tts.base.TTSBackend``).

Use :func:`voice.tts.registry.load_tts` to build a backend by name.
"""
