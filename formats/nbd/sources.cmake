# Sources of the NBD protocol driver. libnbd's headers are needed to build;
# the library itself is loaded with dlopen on first use (libnbd-dl.c).
set(VDK_NBD_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/nbd.c
  ${CMAKE_CURRENT_LIST_DIR}/conn.c
  ${CMAKE_CURRENT_LIST_DIR}/libnbd-dl.c
)
