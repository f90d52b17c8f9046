"""SAM 2's prompt encoder: SAM's, except that box corners may come as points labelled 2 and 3
(the SAM 2 predictor passes boxes that way, before the clicks, and pads every prompt)."""

import torch

from ..sam.prompt_encoder import PromptEncoder as SamPromptEncoder


class PromptEncoder(SamPromptEncoder):
    def _add_label_embeddings(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = torch.where((labels == -1).unsqueeze(-1), torch.zeros_like(emb) + self.not_a_point_embed.weight, emb)
        for label, embedding in enumerate(self.point_embeddings):  # negative, positive, box corners
            emb = torch.where((labels == label).unsqueeze(-1), emb + embedding.weight, emb)
        return emb
