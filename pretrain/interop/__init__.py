"""Our models <-> other formats: one-file safetensors exports, Hugging Face folders (export.py,
hf_format.py). Library code: the `arrowtrain export` / `import-hf` commands call it."""
