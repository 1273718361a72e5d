"""VICI workbook: cross-view geo-localisation (street -> satellite) with VLM re-ranking."""
__version__ = "0.1.0"
