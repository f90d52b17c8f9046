"""SAM 2's prompt encoder: SAM's, except that box corners may come as points labelled 2 and 3
(the SAM 2 predictor passes boxes that way, before the clicks, and pads every prompt)."""

import torch

from ..sam.prompt_encoder import PromptEncoder as SamPromptEncoder


class PromptEncoder(SamPromptEncoder):
    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # centre of the pixel
        if pad:  # a "not a point" token stands in for the absent box
            points = torch.cat([points, points.new_zeros((points.shape[0], 1, 2))], dim=1)
            labels = torch.cat([labels, -labels.new_ones((labels.shape[0], 1))], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size).to(self.not_a_point_embed.weight.dtype)
        emb = torch.where((labels == -1).unsqueeze(-1), torch.zeros_like(emb) + self.not_a_point_embed.weight, emb)
        for label, embedding in enumerate(self.point_embeddings):  # negative, positive, box corners
            emb = torch.where((labels == label).unsqueeze(-1), emb + embedding.weight, emb)
        return emb
