"""VICI workbook: cross-view geo-localisation (street -> satellite) with VLM re-ranking."""
import warnings

# timm imports huggingface_hub, which imports tqdm.auto: in a Jupyter kernel without ipywidgets that warns
# "IProgress not found" into every notebook, though our progress bars come from vici_utils.progress
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
