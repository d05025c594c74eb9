"""Decoding with a key/value cache: sampling, beam search and fill-mask."""
