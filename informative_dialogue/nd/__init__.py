"""Negative distillation core: ``losses`` (L_pred, MRSE, Eq. 13, the schedule),
``soft_unlikelihood`` (the fused soft-unlikelihood kernel) and ``unlikelihood`` (the UL and NT
baselines)."""
