# Sources of the qcow2 driver.
set(VDK_QCOW2_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/bitmaps.c
  ${CMAKE_CURRENT_LIST_DIR}/cluster.c
  ${CMAKE_CURRENT_LIST_DIR}/compress.c
  ${CMAKE_CURRENT_LIST_DIR}/create.c
  ${CMAKE_CURRENT_LIST_DIR}/header.c
  ${CMAKE_CURRENT_LIST_DIR}/io.c
  ${CMAKE_CURRENT_LIST_DIR}/open.c
  ${CMAKE_CURRENT_LIST_DIR}/overlap.c
  ${CMAKE_CURRENT_LIST_DIR}/refcount.c
  ${CMAKE_CURRENT_LIST_DIR}/repair.c
  ${CMAKE_CURRENT_LIST_DIR}/resize.c
  ${CMAKE_CURRENT_LIST_DIR}/snapshot.c
  ${CMAKE_CURRENT_LIST_DIR}/status.c
  ${CMAKE_CURRENT_LIST_DIR}/zero.c
)
