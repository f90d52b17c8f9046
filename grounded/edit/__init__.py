"""Image edits inside a mask: OpenCV removal (inpainting) and perceptual recolouring offline,
Stable Diffusion inpainting (diffusers) when a model is configured. Heavy libraries are imported
by the functions that use them."""
