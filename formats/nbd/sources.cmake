# Sources of the NBD protocol driver (links libnbd: PkgConfig::NBD).
set(VDK_NBD_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/nbd.c
  ${CMAKE_CURRENT_LIST_DIR}/conn.c
)
