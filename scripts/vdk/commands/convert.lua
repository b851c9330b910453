-- vdk convert: copy images into a new (or, with -n, an existing) image, as
-- qemu-img convert does, on the copy engine.
--
-- Read it top to bottom; the pieces live in scripts/vdk/convert.lua:
--   1. check the options (qemu-img's messages);
--   2. open the sources (several are concatenated into one disk);
--   3. create the target under a temporary name, or open it with -n;
--   4. run the copy job, showing progress;
--   5. close the target, rename it into place, print a summary.
-- A new target appears under its name only when it is complete and flushed.
local vdk = require "vdk"
local cli = require "vdk.cli"
local C = require "vdk.convert"
local create_options = require "vdk.create_options"

local convert = {
  name = "convert",
  summary = "convert (copy) images into a new or existing image",
  usage = "convert [-f fmt] [-O fmt] [-o options] [-n] [--target-is-zero] "
    .. "[-B backing_file [-F backing_fmt]] [-c] [-S sparse_size] [-m num] [-W] [-r rate] "
    .. "[-t cache] [-T src_cache] [-p] [-q] [-U] [-l snapshot] [--keep-snapshots] "
    .. "[--output=human|json] "
    .. "[--progress-fd=N] filename [filename2 [...]] output_filename",
  help = [[
  -f FMT              format of the sources (default: probe each)
  -O FMT              format of the target (default: raw; with -n, probed)
  -o OPTIONS          creation options of the target (as vdk create -o);
                      '-o help' lists them
  -n                  write into the existing image output_filename instead
                      of creating it (it must be large enough)
  --target-is-zero    with -n: the target reads as zeros, skip zero ranges
  -B BACKING_FILE     the new target gets this backing file; ranges that
                      read the same in it stay unallocated
  -F BACKING_FMT      format of BACKING_FILE (required with -B)
  -c                  compress the target's data clusters (qcow2; zlib or
                      zstd as -o compression_type says)
  -S SIZE             zero runs of SIZE bytes (aligned) stay holes
                      (default 4k); 0 writes everything (fully allocated)
  -m NUM              requests in flight, 1 to 64 (default 8; 16 when a
                      source or the target is an NBD export)
  -W                  let writes land out of order (faster on some
                      storage; compressed clusters stay in order)
  -r RATE             limit the copy to RATE bytes per second (k, M, G ...)
  -t CACHE            target cache mode: writeback (default: one flush at
                      the end), writethrough, none (O_DIRECT), directsync,
                      unsafe (never flushed)
  -T CACHE            source cache mode (default writeback)
  -p                  show progress (a bar on a terminal)
  -q                  quiet: print no summary
  -U, --force-share   open the sources even if another process writes them
  -l SNAPSHOT         convert an internal snapshot instead of the current
                      disk: an ID or name, or snapshot.id=ID and/or
                      snapshot.name=NAME (qcow2 sources)
  --keep-snapshots    copy every internal snapshot too, with its VM state,
                      sharing unchanged clusters between them as the source
                      does (qcow2 to qcow2; one source)
  -C                  accepted for compatibility (vdk plans copies itself)
  --output=FMT        human (default) or json: the summary as JSON
  --progress-fd=N     write progress as JSON lines (done, total, rate,
                      phase, elapsed) to file descriptor N
  -h, --help          show this help

An existing output_filename is never replaced: give -n to write into it,
or remove it first. A new target is written under a temporary name next
to it and renamed when complete, so a failed or interrupted convert leaves
nothing behind. Ctrl-C stops the copy within a second.

Exit status: 0 on success, 1 on any error, 130 when interrupted.
]],
  options = {
    { short = "f", value = true },
    { short = "O", value = true },
    { short = "o", name = "options", value = true, list = true },
    { short = "n" },
    { long = "target-is-zero" },
    { short = "B", value = true },
    { short = "F", value = true },
    { short = "c" },
    { short = "S", value = true },
    { short = "m", value = true },
    { short = "W" },
    { short = "r", value = true },
    { short = "t", value = true },
    { short = "T", value = true },
    { short = "p" },
    { short = "q" },
    { short = "U", long = "force-share", name = "U" },
    { short = "l", value = true },
    { long = "keep-snapshots" },
    { short = "C" },
    { long = "output", value = true },
    { long = "progress-fd", value = true },
  },
}

local SPARSE_MSG = "Invalid buffer size for sparse output specified. Valid sizes are "
  .. "multiples of 512 up to 16777216. Select 0 to disable sparse detection "
  .. "(fully allocates output)."

-- Step 1: everything the options decide, or nil, message [, "usage"].
local function check(opts, operands)
  if #operands < 2 then return nil, "Must specify image file name", "usage" end
  if opts.l and #operands > 2 then return nil, "No support for concatenating multiple snapshot" end
  local S = require "vdk.snapshot"
  local snap_ref, smsg = opts.l and S.parse_param(opts.l)
  if opts.l and not snap_ref then return nil, smsg end
  if opts["keep-snapshots"] then
    if opts.l then return nil, "--keep-snapshots and -l cannot be used together" end
    if #operands > 2 then return nil, "--keep-snapshots copies one source" end
    if opts.n or opts.B or (opts.O or "raw") ~= "qcow2" then
      return nil, "--keep-snapshots needs a new qcow2 target (-O qcow2), without -n or -B"
    end
  end
  local c = { sources = table.move(operands, 1, #operands - 1, 1, {}),
              target = operands[#operands], snapshot = snap_ref,
              keep_snapshots = opts["keep-snapshots"] }
  c.format = opts.O or (not opts.n and "raw" or nil)
  if c.format and not C.known_format(c.format) then
    return nil, ("Unknown file format '%s'"):format(c.format)
  end
  c.cache, c.src_cache = opts.t or "writeback", opts.T or "writeback"
  if not C.CACHE_MODES[c.cache] then return nil, "Invalid cache option: " .. c.cache end
  if not C.CACHE_MODES[c.src_cache] then
    return nil, "Invalid source cache option: " .. c.src_cache
  end
  c.sparse = 4096
  if opts.S then c.sparse = vdk.parse_size(opts.S) end
  if not c.sparse or c.sparse % 512 ~= 0 or c.sparse > 16777216 then return nil, SPARSE_MSG end
  -- NBD exports answer after a network round trip: more requests in flight
  -- hide it (16, measured against nbdkit with 2 ms of latency).
  local remote = C.is_protocol(c.target)
  for _, name in ipairs(c.sources) do remote = remote or C.is_protocol(name) end
  c.requests = math.tointeger(tonumber(opts.m or (remote and "16" or "8")))
  if not c.requests or c.requests < 1 or c.requests > 64 then
    return nil, "Invalid number of requests in flight (-m): use 1 to 64"
  end
  c.rate = opts.r and vdk.parse_size(opts.r)
  if opts.r and not c.rate then
    return nil, "Invalid rate limit specified. You may use k, M, G, T, P or E suffixes for "
      .. "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."
  end
  c.output = opts.output or "human"
  if c.output ~= "human" and c.output ~= "json" then
    return nil, "--output must be used with human or json as argument."
  end
  c.progress_fd = opts["progress-fd"] and math.tointeger(tonumber(opts["progress-fd"]))
  if opts["progress-fd"] and (not c.progress_fd or c.progress_fd < 0) then
    return nil, "--progress-fd needs a file descriptor number"
  end
  if opts.n and opts.options then return nil, "-o has no effect when skipping image creation" end
  local values, msg = C.target_options(c.format or "raw", opts.options)
  if not values then return nil, msg end
  if values == "help" then return "help" end
  c.values = values
  if opts.B then values.backing_file = opts.B end
  if opts.F then values.backing_fmt = opts.F end
  c.backing = values.backing_file
  if c.backing and not opts.n and c.format == "raw" then
    return nil, "Backing file not supported for file format 'raw'"
  end
  if c.backing and not values.backing_fmt then
    return nil, "Use of backing file requires explicit backing format"
  end
  if opts["target-is-zero"] and not opts.n then
    return nil, "--target-is-zero requires use of -n flag"
  end
  if opts["target-is-zero"] and c.backing then
    return nil, "Cannot use --target-is-zero when the destination image has a backing file"
  end
  if opts.c and (values.preallocation or "off") ~= "off" then
    return nil, "Compression and preallocation not supported at the same time"
  end
  if opts.c and c.format == "raw" then return nil, "Compression not supported for this file format" end
  return c
end

-- Steps 2 and 3: the sources and the target, or nil, message.
local function open_images(c, opts)
  local sources, msg = C.open_sources(c.sources, { format = opts.f, cache = c.src_cache,
                                                   force_share = opts.U })
  if not sources then return nil, msg end
  if c.snapshot then
    local ok, lmsg = require("vdk.snapshot").load(sources[1], c.snapshot)
    if not ok then
      C.close_all(sources)
      return nil, lmsg
    end
  end
  local total = C.total_size(sources)
  local target, tmp
  if opts.n then
    target, msg = C.open_target(c.target, c.format, c.cache, total)
  else
    target, tmp = C.create_target(c.target, c.format, total, c.values, c.cache)
    msg = tmp
  end
  if target and opts.c and target.cluster_size == 0 then
    C.commit_target(target, tmp, c.target, false)
    target, msg = nil, "Compression not supported for this file format"
  end
  if not target then
    C.close_all(sources)
    return nil, msg
  end
  return sources, target, tmp
end

-- Step 4: the copy job. Returns ok, message, progress.
local function copy(c, opts, sources, target)
  local tty = vdk.isatty(1)
  local show, finish = C.progress_display{ bar = opts.p and tty, percent = opts.p and not tty,
                                           fd = c.progress_fd }
  local job, msg = vdk.copy{
    source = sources, target = target,
    fresh_target = not opts.n, target_is_zero = opts["target-is-zero"] or false,
    compare_backing = c.backing ~= nil and not opts.n,
    compress = opts.c or false, unordered = opts.W or false,
    sparse_size = c.sparse, max_requests = c.requests, rate_limit = c.rate,
    on_progress = (opts.p or c.progress_fd) and show or nil,
    cancel_on_interrupt = true,
  }
  if not job then
    finish()
    return false, msg
  end
  local ok, err = job:wait()
  finish()
  return ok, err, job:progress()
end

function convert.run(opts, operands)
  local c, msg, kind = check(opts, operands)
  if c == "help" then
    io.stdout:write(create_options.help(opts.O or "raw"))
    return 0
  end
  if not c then
    return kind == "usage" and cli.usage_error("convert", msg) or cli.fail(msg)
  end
  local sources, target, tmp = open_images(c, opts)
  if not sources then return cli.fail(target) end

  local format = target.format
  local ok, err, progress
  if c.keep_snapshots then
    local show, finish = C.progress_display{ bar = opts.p and vdk.isatty(1),
                                             percent = opts.p and not vdk.isatty(1),
                                             fd = c.progress_fd }
    ok, err, progress = require("vdk.snapshot_convert").run(c.sources[1],
      { format = opts.f, cache = c.src_cache, force_share = opts.U or false }, target,
      (opts.p or c.progress_fd) and show or nil, opts.c or false)
    finish()
  else
    ok, err, progress = copy(c, opts, sources, target)
  end
  C.close_all(sources)
  local committed, cmsg = C.commit_target(target, tmp, c.target, ok)
  if progress and progress.interrupted then
    cli.fail("interrupted after %s of %s: %s", vdk.size_to_str(progress.done),
      vdk.size_to_str(progress.total), opts.n and ("'%s' is incomplete"):format(c.target)
      or ("'%s' was not created"):format(c.target))
    return C.EXIT_INTERRUPTED
  end
  if not ok then return cli.fail("%s", tmp and C.replace_plain(err, tmp, c.target) or err) end
  if not committed then return cli.fail("%s", cmsg) end

  local result = { sources = c.sources, target = c.target, format = format,
                   cache = c.cache, progress = progress }
  if c.output == "json" then
    io.stdout:write(C.summary_json(result), "\n")
  elseif not opts.q then
    io.stdout:write(C.summary(result), "\n")
    if vdk.isatty(1) then io.stdout:write(C.durability_line(c.cache), "\n") end
  end
  return 0
end

return convert
