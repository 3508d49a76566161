"""A Llama-family model (Llama 2/3, Mistral, Qwen2) on the experiment contract, loadable from Hugging Face."""
