"""What a release serves people with, copied verbatim into the release folders: `handler.py` (Hugging Face
Inference Endpoints, in the model repo) and `app.py` (the Gradio Space). Both stand alone: they import
transformers (and gradio) only, and run the model repo's own remote code."""
