-- man/gen-man.lua: make the vdk(1) man page from docs/cli.md, at build time:
--   vdk run man/gen-man.lua docs/cli.md vdk.1 VERSION
-- (any Lua 5.4 runs it; the build uses the launcher it just built).
--
-- docs/cli.md is the one source of the command's documentation; this turns
-- its Markdown into man(7) macros: "# " is the page title, "## vdk NAME"
-- sections become subsections of COMMANDS, other "## " sections become
-- sections, paragraphs are filled, tables become tagged paragraphs (first
-- cell as the tag), bullet lists become indented paragraphs, indented and
-- fenced code blocks are shown verbatim, `code` is bold and **strong** bold.
local input, output, version = arg[1], arg[2], arg[3] or "0.1.0"
if not (input and output) then
  io.stderr:write("usage: gen-man.lua CLI.md OUTPUT.1 [VERSION]\n")
  os.exit(2)
end

-- Escape text for roff and turn the inline Markdown into fonts.
local function inline(s)
  s = s:gsub("\\", "\\e")
  s = s:gsub("%-", "\\-")
  s = s:gsub("`([^`]*)`", "\\fB%1\\fR")
  s = s:gsub("%*%*(.-)%*%*", "\\fB%1\\fR")
  s = s:gsub("%[([^%]]*)%]%([^)]*%)", "%1")
  return s
end

-- A verbatim line: escapes only, no fonts.
local function verbatim(s)
  s = s:gsub("\\", "\\e")
  s = s:gsub("%-", "\\-")
  if s:match("^[.']") then s = "\\&" .. s end
  return s
end

-- Lines of roff must not start with a control character.
local function text_line(s)
  if s:match("^[.']") then return "\\&" .. s end
  return s
end

local out = {}
local function emit(s) out[#out + 1] = s end

local lines = {}
for line in io.lines(input) do lines[#lines + 1] = line end

emit(('.TH VDK 1 "" "vdk %s" "User Commands"'):format(version))
emit(".\\\" Generated from docs/cli.md by man/gen-man.lua; edit the Markdown.")
emit(".SH NAME")
emit("vdk \\- a disk image tool (qemu-img compatible) with a Lua engine")

local i = 1
local in_commands = false
local para = {}
-- Before the first "## ": the first code block is the synopsis, the text
-- after it the description.
local preamble, described = true, false

local function flush_para()
  if #para > 0 then
    if preamble and not described then
      emit(".SH DESCRIPTION")
      described = true
    end
    emit(".PP")
    for _, l in ipairs(para) do emit(text_line(inline(l))) end
    para = {}
  end
end

local function table_rows(first)
  local j = first
  local rows = {}
  while j <= #lines and lines[j]:match("^|") do
    local cells = {}
    for cell in lines[j]:gsub("^|", ""):gmatch("([^|]*)|") do
      cells[#cells + 1] = cell:gsub("^%s+", ""):gsub("%s+$", "")
    end
    rows[#rows + 1] = cells
    j = j + 1
  end
  -- rows[1] is the header, rows[2] the separator.
  for r = 3, #rows do
    emit(".TP")
    emit(text_line(inline(rows[r][1] or "")))
    emit(text_line(inline(table.concat(rows[r], " ", 2))))
  end
  return j
end

while i <= #lines do
  local line = lines[i]
  local h1, h2 = line:match("^# (.*)"), line:match("^## (.*)")
  if h1 then
    flush_para()
    i = i + 1
  elseif h2 then
    flush_para()
    preamble = false
    local cmd = h2:match("^vdk (%S+)$")
    if cmd then
      if not in_commands then
        emit(".SH COMMANDS")
        in_commands = true
      end
      emit('.SS "vdk ' .. cmd .. '"')
    else
      in_commands = false
      emit('.SH "' .. h2:upper():gsub('"', "") .. '"')
    end
    i = i + 1
  elseif line:match("^```") then
    flush_para()
    emit(".PP")
    emit(".RS 4")
    emit(".nf")
    i = i + 1
    while i <= #lines and not lines[i]:match("^```") do
      emit(verbatim(lines[i]))
      i = i + 1
    end
    emit(".fi")
    emit(".RE")
    i = i + 1
  elseif line:match("^    ") then
    flush_para()
    if preamble and not described then emit(".SH SYNOPSIS") end
    emit(".PP")
    emit(".RS 4")
    emit(".nf")
    while i <= #lines and (lines[i]:match("^    ") or (lines[i] == "" and lines[i + 1]
        and lines[i + 1]:match("^    "))) do
      emit(verbatim(lines[i]:sub(5)))
      i = i + 1
    end
    emit(".fi")
    emit(".RE")
  elseif line:match("^|") then
    flush_para()
    i = table_rows(i)
  elseif line:match("^%- ") then
    flush_para()
    emit(".IP \\(bu 2")
    emit(text_line(inline(line:sub(3))))
    i = i + 1
    while i <= #lines and lines[i]:match("^  %S") do
      emit(text_line(inline(lines[i]:sub(3))))
      i = i + 1
    end
  elseif line:match("^%s*$") then
    flush_para()
    i = i + 1
  else
    para[#para + 1] = line
    i = i + 1
  end
end
flush_para()
emit(".SH SEE ALSO")
emit("\\fBqemu\\-img\\fR(1); the Lua API in docs/lua-api.md of the vdk sources.")

local f = assert(io.open(output, "w"))
f:write(table.concat(out, "\n"), "\n")
f:close()
