"""The model beside schnet_model.py (SchNet itself): its fused CPU kernels, the checkpoint format, mixed precision
and transfer from one checkpoint to another."""
