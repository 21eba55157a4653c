"""Helpers of the SAMMed3D module: everything of ``SAMMed3D.py`` that is not a template class.

Design: ``SAMMed3D.py`` keeps only what Slicer's module template puts there (module, parameter
node, widget, module logic, self-test); the rest lives here, in a sub-package, because Slicer
treats every loose ``.py`` file of the module folder as a module. The MRML logic
(``InteractiveSegmentationLogic``) never imports this package; this package never imports torch
or ``SAMMed3DLib`` at import time, so Slicer can load the module before PyTorch is installed.

- :mod:`.choices`: the options of the parameter node (model, device, write mode) as enums.
- :mod:`.worker`: the persistent model thread (plain Python, no Qt: tested with pytest).
- :mod:`.module_logic`: ``SAMMed3DLogic``'s behaviour without ``ScriptedLoadableModuleLogic``:
  parameter-node settings in, a lazily created ``InteractiveSegmentationLogic`` behind (tested
  with pytest on real MRML scenes).
- :mod:`.dependencies`: PyTorch through the PyTorch extension, then ``requirements.txt``.
- :mod:`.segment_editor`: the Segment Editor's masking settings and undo, when that module is loaded.

Nothing is imported here, so ``import SAMMed3DModule.worker`` needs neither Qt nor ``slicer``, and
no module of this package imports Qt.
"""
