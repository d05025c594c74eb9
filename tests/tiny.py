"""Overrides for a model small enough to compile and run in a second; tests add their own."""

TINY_MODEL = [
    "model.num_layers=2",
    "model.embed_dim=32",
    "model.num_heads=4",
    "model.mlp_dim=64",
    "model.vocab_size=100",
    "model.max_len=16",
    "data.seq_len=16",
]
# Adafactor on a tiny model widened so that its matrices reach 128 x 128 and factor.
FACTORED_ADAFACTOR = ["model.embed_dim=128", "model.mlp_dim=256", "optim.optimizer=adafactor"]
