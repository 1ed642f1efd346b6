"""The attack suite runs whole simulated ceremonies (about 10-25 s each on one core)."""
