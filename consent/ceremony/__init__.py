"""The live consent ceremony: prompts shown one at a time, and the checks of what the
camera and microphone caught (see ``docs/consent-security.md``)."""
