"""Where weights come from: HF directories, GGUF files, the demo model, random shapes."""
