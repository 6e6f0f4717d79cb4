; hello.asm -- a flat BareMetal app, byte for byte what the real kernel runs.
;   baremetal run examples/hello.asm   (or: nasm -f bin examples/hello.asm -o hello.app)
BITS 64
DEFAULT REL				; RIP-relative data: the image runs high
ORG 0xFFFF800000000000

b_output	equ 0x0000000000100018
b_system	equ 0x0000000000100040
SMP_NUMCORES	equ 0x11

start:
	mov rsi, message		; RSI = address, RCX = count
	mov rcx, message_end - message
	call [abs b_output]
	mov rcx, SMP_NUMCORES		; b_system: RCX = function, RAX = var1, RDX = var2
	call [abs b_system]
	add al, '0'			; one digit is enough for an example
	mov [cores], al
	mov rsi, cores_line
	mov rcx, cores_end - cores_line
	call [abs b_output]
	xor eax, eax			; exit code 0
	ret				; back to the Monitor

message: db 'Hello, world!', 10
message_end:
cores_line: db 'cores: '
cores: db '?', 10
cores_end:
