# Sources of formats/: the registry and each driver's own list.
include(${CMAKE_CURRENT_LIST_DIR}/qcow2/sources.cmake)  # VDK_QCOW2_SOURCES
include(${CMAKE_CURRENT_LIST_DIR}/qed/sources.cmake)    # VDK_QED_SOURCES
include(${CMAKE_CURRENT_LIST_DIR}/nbd/sources.cmake)    # VDK_NBD_SOURCES
set(VDK_FORMAT_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/registry.c
  ${CMAKE_CURRENT_LIST_DIR}/raw/raw.c
  ${VDK_QCOW2_SOURCES}
  ${VDK_QED_SOURCES}
  ${VDK_NBD_SOURCES}
)
