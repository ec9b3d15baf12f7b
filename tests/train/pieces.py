"""A hand-built tokenizer for the cross-tokenizer tests: a list of byte pieces plus one special
(the eos), greedy longest match, with the interface the aligners read (token bytes, lengths)."""

import numpy as np


class Pieces:
    """A hand-built tokenizer from a list of byte pieces (+ one special, the eos)."""

    kind = "pieces"

    def __init__(self, pieces):
        self.pieces = [p.encode() for p in pieces]
        self.eos_id = len(pieces)
        self.pad_id = self.eos_id

    def token_bytes(self):
        return self.pieces + [b""]

    def token_byte_lengths(self):
        return np.array([len(p) for p in self.token_bytes()], np.int64)

    def encode(self, text):  # greedy longest match
        data, out = text.encode(), []
        while data:
            best = max(
                (i for i, p in enumerate(self.pieces) if data.startswith(p)),
                key=lambda i: len(self.pieces[i]),
            )
            out.append(best)
            data = data[len(self.pieces[best]) :]
        return np.asarray(out, np.int32)
