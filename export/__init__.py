"""Export stage: fold batch norm away, write ONNX and a model repository, prove nothing changed.

Kept free of imports so ``bnmodel --help`` and ``bnmodel serve`` never load torch or onnx;
the library lives in ``bnmodel.export.api`` (``export_checkpoint``) and its modules.
"""
