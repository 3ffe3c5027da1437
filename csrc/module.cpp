// Python module entry point: `import con2._C` loads this library, which runs the
// TORCH_LIBRARY registrations. Only built into the Python extension (setup.py); the
// CMake library (CMakeLists.txt) leaves this file out.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "con2 native ops (registered as torch.ops.con2.*)", -1, nullptr,
  };
  return PyModule_Create(&module_def);
}
}
