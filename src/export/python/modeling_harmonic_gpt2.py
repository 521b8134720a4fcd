"""hgpt's harmonic GPT-2: GPT-2 whose output head scores tokens by distance.

For the final hidden state h and the class centres w_i (the rows of
lm_head.weight, tied to the token embedding unless config.json unties them):

    s_i = max(|h|^2 + |w_i|^2 - 2 h.w_i, eps)     squared distance
    z_i = -(n/2) ln s_i                            harmonic logit

The model returns z as its logits. Since p = softmax(z) gives p_i proportional
to d_i^-n, GPT-2's shifted cross-entropy on z is exactly the harmonic loss, and
generate(), perplexity code and Trainer work unchanged.

transformers rebuilds `lm_head` as a plain Linear in some APIs
(resize_token_embeddings, _get_resized_lm_head, set_output_embeddings); every
such Linear is wrapped here into a HarmonicHead sharing its weight, so the head
stays harmonic whatever is done to the model. `HarmonicGPT2Model` is the trunk
alone (AutoModel: the hidden states, for feature extraction).
"""

from torch import nn
from transformers import GPT2LMHeadModel, GPT2Model

from .configuration_harmonic_gpt2 import HarmonicGPT2Config


class HarmonicHead(nn.Linear):
    """A bias-free Linear whose weight rows are class centres and whose output is
    the harmonic logits z rather than dot products. Being a Linear, it is tied,
    loaded and saved exactly as GPT-2's lm_head."""

    def __init__(self, n_embd, vocab_size, exponent, eps, **factory):
        super().__init__(n_embd, vocab_size, bias=False, **factory)
        self.exponent = exponent
        self.eps = eps

    @classmethod
    def around(cls, linear, config):
        """A harmonic head whose centres are `linear`'s weight (the same Parameter,
        so a tie to the embedding holds)."""
        if isinstance(linear, cls):
            return linear
        if not isinstance(linear, nn.Linear) or linear.bias is not None:
            raise TypeError(
                f"the harmonic head needs a bias-free nn.Linear, got {linear!r}"
            )
        out_features, in_features = linear.weight.shape
        head = cls(
            in_features,
            out_features,
            config.harmonic_exponent,
            config.harmonic_eps,
            device="meta",
        )
        head.weight = linear.weight
        return head

    def forward(self, h):
        # In float32 whatever the model's dtype, as hgpt computes its head.
        h, w = h.float(), self.weight.float()
        s = h.square().sum(-1, keepdim=True) + w.square().sum(-1) - 2 * (h @ w.T)
        return -(self.exponent / 2) * s.clamp_min(self.eps).log()

    def extra_repr(self):
        return f"{super().extra_repr()}, exponent={self.exponent}, eps={self.eps}"


class HarmonicGPT2Model(GPT2Model):
    """The trunk: GPT-2's blocks and final layer norm, without the head."""

    config_class = HarmonicGPT2Config


class HarmonicGPT2LMHeadModel(GPT2LMHeadModel):
    config_class = HarmonicGPT2Config

    def __init__(self, config):
        super().__init__(config)
        self.lm_head = HarmonicHead.around(self.lm_head, config)
        # The harmonic loss is causal-LM cross-entropy on z (named, so transformers
        # need not guess it from the class name).
        self.loss_type = "ForCausalLM"
        # Ties the head to the token embedding (unless untied).
        self.post_init()

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = HarmonicHead.around(new_embeddings, self.config)

    def _get_resized_lm_head(self, old_lm_head, *args, **kwargs):
        resized = super()._get_resized_lm_head(old_lm_head, *args, **kwargs)
        return HarmonicHead.around(resized, self.config)

