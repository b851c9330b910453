-- vdk compare: do two images hold the same disk? As qemu-img compare: the
-- same messages and exit codes (0 identical, 1 different, 2 error).
--
-- Steps: open both images (whole chains), run a compare job (it reads only
-- what block status cannot settle, many requests in flight), then print
-- the verdict. Without -s, images of different sizes are equal when the
-- longer one reads as zeros past the end of the shorter.
local vdk = require "vdk"
local cli = require "vdk.cli"
local C = require "vdk.convert"

local compare = {
  name = "compare",
  summary = "check whether two images have the same content",
  usage = "compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2",
  help = [[
  -f FMT              format of the first image (default: probe it)
  -F FMT              format of the second image (default: probe it)
  -T CACHE            cache mode of both images (default writeback)
  -p                  show progress
  -q                  quiet: print nothing, only set the exit status
  -s                  strict: images of different sizes, or whose
                      allocation differs, are different
  -U, --force-share   open the images even if another process writes them
  -h, --help          show this help

Prints "Images are identical." or the first differing 512-byte sector:
"Content mismatch at offset N!".

Exit status: 0 when the images are identical, 1 when they differ, 2 on
an error (an image cannot be opened or read, a usage error).
]],
  options = {
    { short = "f", value = true },
    { short = "F", value = true },
    { short = "T", value = true },
    { short = "p" },
    { short = "q" },
    { short = "s" },
    { short = "U", long = "force-share", name = "U" },
  },
}

local function fail(fmt, ...)
  cli.fail(fmt, ...)
  return 2
end

function compare.run(opts, operands)
  if #operands ~= 2 then
    cli.usage_error("compare", "Expecting two image file names")
    return 2
  end
  local cache = opts.T or "writeback"
  if not C.CACHE_MODES[cache] then return fail("Invalid source cache option: %s", cache) end
  local images = {}
  for i, fmt in ipairs({ opts.f or false, opts.F or false }) do
    local list, msg = C.open_sources({ operands[i] }, { format = fmt or nil, cache = cache,
                                                        force_share = opts.U })
    if not list then
      C.close_all(images)
      return fail("%s", msg)
    end
    images[i] = list[1]
  end
  local say = opts.q and function() end or function(s) io.stdout:write(s, "\n") end
  local a, b = images[1], images[2]
  if a.size ~= b.size and not opts.s then say("Warning: Image size mismatch!") end

  local tty = vdk.isatty(1)
  local show, finish = C.progress_display{ bar = opts.p and tty, percent = opts.p and not tty }
  local job, msg, code = vdk.compare(a, b, { strict = opts.s or false, cancel_on_interrupt = true,
                                            on_progress = opts.p and show or nil })
  local verdict, offset
  if job then verdict, offset, code = job:wait() end
  finish()
  local interrupted = job and job:progress().interrupted
  C.close_all(images)
  if interrupted then
    cli.fail("interrupted")
    return C.EXIT_INTERRUPTED
  end
  if not verdict then return fail("%s", job and offset or msg) end
  if verdict == "equal" then
    say("Images are identical.")
    return 0
  elseif verdict == "size" then
    say("Strict mode: Image size mismatch!")
  elseif verdict == "allocation" then
    say(("Strict mode: Offset %d block status mismatch!"):format(offset))
  else
    say(("Content mismatch at offset %d!"):format(offset))
  end
  return 1
end

return compare
