"""Data sets: the 2-D toys (generated on device) and scikit-learn's digits."""
