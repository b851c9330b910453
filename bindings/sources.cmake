# Sources of the Lua module (bindings) and of the vdk launcher.
set(VDK_BINDING_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/lvdk.c
)
set(VDK_LAUNCHER_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/launcher.c
)
