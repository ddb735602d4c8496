"""The export stage: merge the adapter, convert with llama.cpp's own converter and quantize (GGUF), export and
quantize ONNX, verify every artifact against the merged model, and write the bundle (manifest, model card,
Ollama Modelfile). May import kit.core and kit.models (torch, transformers, optimum, gguf and llama_cpp inside
the functions that need them); never the distill, eval, recipe or CLI layers above."""
