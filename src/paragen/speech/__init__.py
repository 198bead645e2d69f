"""Speech recognition: synthesised data, an encoder-decoder with a CTC head, and AR / NAR decoders.

Layout: ``vocab`` (characters), ``features`` (audio -> log-mel, the one code path for training
and inference), ``data`` (espeak-ng corpus), ``model`` (encoder, CTC head, AR and NAR
decoders), ``train``, ``decode/`` (one decoder per file), ``api`` (load / transcribe),
``cli`` and ``bench``.
"""
