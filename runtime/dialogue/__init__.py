"""Dialogue: LLM backends behind one Protocol, persona, memory and sentence streaming."""
