# Sources of core/ (the block layer). Kept explicit so a half-written file
# never enters the build by accident.
set(VDK_CORE_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/error.c
  ${CMAKE_CURRENT_LIST_DIR}/opts.c
  ${CMAKE_CURRENT_LIST_DIR}/image.c
  ${CMAKE_CURRENT_LIST_DIR}/image-snapshot.c
  ${CMAKE_CURRENT_LIST_DIR}/cache.c
  ${CMAKE_CURRENT_LIST_DIR}/file.c
  ${CMAKE_CURRENT_LIST_DIR}/file-posix.c
  ${CMAKE_CURRENT_LIST_DIR}/file-posix-space.c
  ${CMAKE_CURRENT_LIST_DIR}/file-lock.c
  ${CMAKE_CURRENT_LIST_DIR}/file-memory.c
  ${CMAKE_CURRENT_LIST_DIR}/file-fault.c
  ${CMAKE_CURRENT_LIST_DIR}/file-record.c
  ${CMAKE_CURRENT_LIST_DIR}/workers.c
  ${CMAKE_CURRENT_LIST_DIR}/copy.c
  ${CMAKE_CURRENT_LIST_DIR}/copy-plan.c
  ${CMAKE_CURRENT_LIST_DIR}/copy-io.c
  ${CMAKE_CURRENT_LIST_DIR}/compare.c
  ${CMAKE_CURRENT_LIST_DIR}/measure.c
  ${CMAKE_CURRENT_LIST_DIR}/check.c
)
