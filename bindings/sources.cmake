# Sources of the Lua module (bindings) and of the vdk launcher.
set(VDK_BINDING_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/lvdk.c
  ${CMAKE_CURRENT_LIST_DIR}/ljob.c
  ${CMAKE_CURRENT_LIST_DIR}/lsnapshot.c
  ${CMAKE_CURRENT_LIST_DIR}/ltesting.c
  ${CMAKE_CURRENT_LIST_DIR}/linspect.c
  ${CMAKE_CURRENT_LIST_DIR}/lcheck.c
)
set(VDK_LAUNCHER_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/launcher.c
)
# The launcher tells an installed binary from one in a build tree by whether
# it runs from the install bindir.
set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/launcher.c PROPERTIES
  COMPILE_DEFINITIONS "VDK_INSTALL_BINDIR=\"${CMAKE_INSTALL_FULL_BINDIR}\"")
