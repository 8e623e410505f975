"""Files in and out: ``sat`` (SwissArmyTransformer directories, safe reading, the one routine that builds a
model from a state dict), ``checkpoints`` (loading the stage models, the DSR model and the image decoder;
conversion to safetensors), ``tokenizer`` (icetk's text side), ``export`` (GIF / MP4 / frames / token files),
``default_assets`` (the embedded tiny random model folder).
"""
