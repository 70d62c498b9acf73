! lightning_online.f90 - Fortran client of lightning_online: the C client (lightning_online.h)
! through ISO_C_BINDING. Stream the time steps of a solver program to the training process that
! launched it (an ExternalSolver); same environment, protocol and semantics as the C client.
!
! Typical use, one sender:
!
!   use lightning_online
!   type(c_ptr) :: client
!   type(lo_step) :: step
!   real(c_double) :: theta(5)
!   real(c_float), target :: x(6), y(nx * ny)
!   if (lo_get_parameters(theta) /= 5) ...
!   client = lo_connect()
!   if (.not. c_associated(client)) then
!       write (0, '(a)') lo_error_message(); stop 2
!   end if
!   do k = 1, n
!       call lo_step_clear(step)
!       call lo_step_add(step, "x", x)          ! 1-D arrays: shape (size(x),)
!       call lo_step_add(step, "y", y)
!       if (lo_step_send(client, step) /= 0) ...
!   end do
!   if (lo_close(client) /= 0) ...             ! or lo_abort(client, "why") when the run fails
!
! Several senders ("parts"): with MPI, each rank connects with lo_connect_part(rank, size) and
! sends its own rows; the training side concatenates each field along its first axis in part
! order (see lightning_online.h).
!
! Arrays: lo_step_add keeps the array's address until lo_step_send, so the actual argument must
! be contiguous and stay alive (give it the TARGET attribute). A rank-2 array a(n1, n2) goes as
! the C-order array of shape (n2, n1) (the same bytes: Fortran's first index varies fastest);
! other ranks and dtypes: lo_step_add_raw with the C-order shape and c_loc of the data.
!
! Build (the module, the C library and the program in one command; gfortran compiles the C
! file too; with MPI, mpifort instead of gfortran):
!
!   gfortran -O2 -J build lightning_online.f90 solver.f90 lightning_online.c -o solver
!
! (python -m lightning_online.client --include prints the directory of these files, and
! --build-example heat2d_f builds the shipped example, csrc/examples/heat2d_f.f90.)
module lightning_online
    use, intrinsic :: iso_c_binding
    implicit none
    private

    public :: c_ptr, c_associated, c_null_ptr, c_loc, c_char, c_null_char, c_float, c_double
    public :: c_int, c_int8_t, c_int16_t, c_int32_t, c_int64_t
    public :: lo_field, lo_step
    public :: lo_connect, lo_connect_part, lo_close, lo_abort, lo_get_parameters
    public :: lo_step_clear, lo_step_add, lo_step_add_raw, lo_step_send, lo_error_message
    public :: LO_FLOAT32, LO_FLOAT64, LO_FLOAT16, LO_INT8, LO_INT16, LO_INT32, LO_INT64
    public :: LO_UINT8, LO_BOOL, LO_COMPLEX64, LO_COMPLEX128, LO_MAX_FIELDS, LO_MAX_DIMS

    ! dtype codes, as in lightning_online.h
    integer(c_int), parameter :: LO_FLOAT32 = 0, LO_FLOAT64 = 1, LO_FLOAT16 = 2, LO_INT8 = 3
    integer(c_int), parameter :: LO_INT16 = 4, LO_INT32 = 5, LO_INT64 = 6, LO_UINT8 = 7
    integer(c_int), parameter :: LO_BOOL = 8, LO_COMPLEX64 = 9, LO_COMPLEX128 = 10
    integer, parameter :: LO_MAX_FIELDS = 16, LO_MAX_DIMS = 8, NAME_BYTES = 48

    ! lo_field of lightning_online.h
    type, bind(c) :: lo_field
        type(c_ptr) :: name = c_null_ptr
        integer(c_int) :: dtype = 0
        integer(c_int) :: ndim = 0
        type(c_ptr) :: shape = c_null_ptr
        type(c_ptr) :: data = c_null_ptr
    end type lo_field

    ! One step being assembled: up to LO_MAX_FIELDS named arrays (addresses only). A field
    ! that could not be added (a name too long, too many fields) makes lo_step_send fail with
    ! the reason, so that a program checks one return code per step.
    type :: lo_step
        integer :: n = 0
        character(len=NAME_BYTES) :: names(LO_MAX_FIELDS) = ''
        integer :: name_lengths(LO_MAX_FIELDS) = 0
        integer(c_int) :: dtypes(LO_MAX_FIELDS) = 0
        integer(c_int) :: ndims(LO_MAX_FIELDS) = 0
        integer(c_int64_t) :: shapes(LO_MAX_DIMS, LO_MAX_FIELDS) = 0
        type(c_ptr) :: data(LO_MAX_FIELDS) = c_null_ptr
        character(len=200) :: error = ''
    end type lo_step

    ! The reason lo_step_send refused a step before calling the C library (reported by
    ! lo_error_message until the next call into the library).
    character(len=200), save :: step_error = ''

    interface lo_step_add
        module procedure add_f32_1, add_f64_1, add_i32_1, add_i64_1
        module procedure add_f32_2, add_f64_2, add_i32_2, add_i64_2
    end interface lo_step_add

    interface
        function c_lo_connect() bind(c, name='lo_connect') result(c)
            import :: c_ptr
            type(c_ptr) :: c
        end function c_lo_connect

        function c_lo_connect_part(part, n_parts) bind(c, name='lo_connect_part') result(c)
            import :: c_ptr, c_int
            integer(c_int), value :: part, n_parts
            type(c_ptr) :: c
        end function c_lo_connect_part

        function c_lo_parameters(theta, max) bind(c, name='lo_parameters') result(n)
            import :: c_double, c_int
            real(c_double), intent(out) :: theta(*)
            integer(c_int), value :: max
            integer(c_int) :: n
        end function c_lo_parameters

        function c_lo_send_step(c, n_fields, fields) bind(c, name='lo_send_step') result(rc)
            import :: c_ptr, c_int, lo_field
            type(c_ptr), value :: c
            integer(c_int), value :: n_fields
            type(lo_field), intent(in) :: fields(*)
            integer(c_int) :: rc
        end function c_lo_send_step

        function c_lo_close(c) bind(c, name='lo_close') result(rc)
            import :: c_ptr, c_int
            type(c_ptr), value :: c
            integer(c_int) :: rc
        end function c_lo_close

        function c_lo_abort(c, message) bind(c, name='lo_abort') result(rc)
            import :: c_ptr, c_int, c_char
            type(c_ptr), value :: c
            character(kind=c_char), intent(in) :: message(*)
            integer(c_int) :: rc
        end function c_lo_abort

        function c_lo_last_error() bind(c, name='lo_last_error') result(p)
            import :: c_ptr
            type(c_ptr) :: p
        end function c_lo_last_error

        function c_strlen(s) bind(c, name='strlen') result(n)
            import :: c_ptr, c_size_t
            type(c_ptr), value :: s
            integer(c_size_t) :: n
        end function c_strlen
    end interface

contains

    ! Connect as the only sender of the run (LIGHTNING_ONLINE_ADDRESS and _TOKEN). A null
    ! pointer (c_associated(c) is false) on failure: the reason is lo_error_message().
    function lo_connect() result(c)
        type(c_ptr) :: c
        step_error = ''
        c = c_lo_connect()
    end function lo_connect

    ! Connect as part `part` (0-based, e.g. the MPI rank) of `n_parts` senders.
    function lo_connect_part(part, n_parts) result(c)
        integer, intent(in) :: part, n_parts
        type(c_ptr) :: c
        step_error = ''
        c = c_lo_connect_part(int(part, c_int), int(n_parts, c_int))
    end function lo_connect_part

    ! Parse LIGHTNING_ONLINE_PARAMETERS into theta: the number of values, or -1 when the
    ! variable is missing, does not parse or holds more than size(theta) values.
    function lo_get_parameters(theta) result(n)
        real(c_double), intent(out) :: theta(:)
        integer :: n
        real(c_double) :: buffer(max(1, size(theta)))
        step_error = ''
        n = c_lo_parameters(buffer, int(size(theta), c_int))
        if (n > 0) theta(1:n) = buffer(1:n)
    end function lo_get_parameters

    ! Send CLOSE (the run is complete) and free the client; 0 ok, -1 error.
    function lo_close(c) result(rc)
        type(c_ptr), intent(inout) :: c
        integer :: rc
        step_error = ''
        rc = c_lo_close(c)
        c = c_null_ptr
    end function lo_close

    ! Send ERROR with the message (the run failed) and free the client; 0 ok, -1 error.
    function lo_abort(c, message) result(rc)
        type(c_ptr), intent(inout) :: c
        character(len=*), intent(in) :: message
        integer :: rc
        step_error = ''
        rc = c_lo_abort(c, trim(message)//c_null_char)
        c = c_null_ptr
    end function lo_abort

    ! The reason of the last failure ('' if none).
    function lo_error_message() result(message)
        character(len=:), allocatable :: message
        type(c_ptr) :: p
        character(kind=c_char), pointer :: chars(:)
        integer :: i, n
        if (len_trim(step_error) > 0) then
            message = trim(step_error)
            return
        end if
        p = c_lo_last_error()
        n = int(c_strlen(p))
        call c_f_pointer(p, chars, [n])
        allocate (character(len=n) :: message)
        do i = 1, n
            message(i:i) = chars(i)
        end do
    end function lo_error_message

    ! Forget the fields of the previous step.
    subroutine lo_step_clear(step)
        type(lo_step), intent(inout) :: step
        step%n = 0
        step%error = ''
    end subroutine lo_step_clear

    ! Add a field: its name, dtype code, C-order shape and the address of its data (c_loc of a
    ! contiguous TARGET array that stays alive until lo_step_send).
    subroutine lo_step_add_raw(step, name, dtype, shape, data)
        type(lo_step), intent(inout) :: step
        character(len=*), intent(in) :: name
        integer, intent(in) :: dtype
        integer(c_int64_t), intent(in) :: shape(:)
        type(c_ptr), intent(in) :: data
        integer :: k
        if (len_trim(step%error) > 0) return
        if (step%n >= LO_MAX_FIELDS) then
            write (step%error, '(a,i0,a)') 'a step holds at most ', LO_MAX_FIELDS, ' fields'
            return
        end if
        if (len(name) < 1 .or. len(name) >= NAME_BYTES) then
            write (step%error, '(a,a,a,i0,a)') 'field name "', name, '" must be 1 to ', &
                NAME_BYTES - 1, ' bytes'
            return
        end if
        if (size(shape) > LO_MAX_DIMS) then
            write (step%error, '(a,a,a,i0)') 'field "', name, '": ndim ', size(shape)
            return
        end if
        k = step%n + 1
        step%names(k) = name
        step%name_lengths(k) = len(name)
        step%dtypes(k) = int(dtype, c_int)
        step%ndims(k) = int(size(shape), c_int)
        step%shapes(:, k) = 0
        step%shapes(1:size(shape), k) = shape
        step%data(k) = data
        step%n = k
    end subroutine lo_step_add_raw

    ! Send the step's fields as one step; 0 ok, -1 error (reason: lo_error_message(), or the
    ! reason a field could not be added). Nothing is sent when the step is refused.
    function lo_step_send(c, step) result(rc)
        type(c_ptr), intent(in) :: c
        type(lo_step), intent(in) :: step
        integer :: rc
        type(lo_field) :: fields(LO_MAX_FIELDS)
        character(kind=c_char), target :: names(NAME_BYTES, LO_MAX_FIELDS)
        integer(c_int64_t), target :: shapes(LO_MAX_DIMS, LO_MAX_FIELDS)
        integer :: k, n
        step_error = ''
        if (len_trim(step%error) > 0) then
            step_error = step%error
            rc = -1
            return
        end if
        do k = 1, step%n
            n = step%name_lengths(k)
            names(:, k) = c_null_char
            names(1:n, k) = transfer(step%names(k)(1:n), names(1:n, k))
            shapes(:, k) = step%shapes(:, k)
            fields(k)%name = c_loc(names(1, k))
            fields(k)%dtype = step%dtypes(k)
            fields(k)%ndim = step%ndims(k)
            fields(k)%shape = c_loc(shapes(1, k))
            fields(k)%data = step%data(k)
        end do
        rc = c_lo_send_step(c, int(step%n, c_int), fields)
    end function lo_step_send

    subroutine add_f32_1(step, name, a)
        type(lo_step), intent(inout) :: step
        character(len=*), intent(in) :: name
        real(c_float), intent(in), target, contiguous :: a(:)
        call lo_step_add_raw(step, name, int(LO_FLOAT32), [int(size(a), c_int64_t)], &
                             c_loc_or_null(c_loc(a), size(a)))
    end subroutine add_f32_1

    subroutine add_f64_1(step, name, a)
        type(lo_step), intent(inout) :: step
        character(len=*), intent(in) :: name
        real(c_double), intent(in), target, contiguous :: a(:)
        call lo_step_add_raw(step, name, int(LO_FLOAT64), [int(size(a), c_int64_t)], &
                             c_loc_or_null(c_loc(a), size(a)))
    end subroutine add_f64_1

    subroutine add_i32_1(step, name, a)
        type(lo_step), intent(inout) :: step
        character(len=*), intent(in) :: name
        integer(c_int32_t), intent(in), target, contiguous :: a(:)
        call lo_step_add_raw(step, name, int(LO_INT32), [int(size(a), c_int64_t)], &
                             c_loc_or_null(c_loc(a), size(a)))
    end subroutine add_i32_1

    subroutine add_i64_1(step, name, a)
        type(lo_step), intent(inout) :: step
        character(len=*), intent(in) :: name
        integer(c_int64_t), intent(in), target, contiguous :: a(:)
        call lo_step_add_raw(step, name, int(LO_INT64), [int(size(a), c_int64_t)], &
                             c_loc_or_null(c_loc(a), size(a)))
    end subroutine add_i64_1

    subroutine add_f32_2(step, name, a)
        type(lo_step), intent(inout) :: step
        character(len=*), intent(in) :: name
        real(c_float), intent(in), target, contiguous :: a(:, :)
        call lo_step_add_raw(step, name, int(LO_FLOAT32), c_shape(shape(a)), &
                             c_loc_or_null(c_loc(a), size(a)))
    end subroutine add_f32_2

    subroutine add_f64_2(step, name, a)
        type(lo_step), intent(inout) :: step
        character(len=*), intent(in) :: name
        real(c_double), intent(in), target, contiguous :: a(:, :)
        call lo_step_add_raw(step, name, int(LO_FLOAT64), c_shape(shape(a)), &
                             c_loc_or_null(c_loc(a), size(a)))
    end subroutine add_f64_2

    subroutine add_i32_2(step, name, a)
        type(lo_step), intent(inout) :: step
        character(len=*), intent(in) :: name
        integer(c_int32_t), intent(in), target, contiguous :: a(:, :)
        call lo_step_add_raw(step, name, int(LO_INT32), c_shape(shape(a)), &
                             c_loc_or_null(c_loc(a), size(a)))
    end subroutine add_i32_2

    subroutine add_i64_2(step, name, a)
        type(lo_step), intent(inout) :: step
        character(len=*), intent(in) :: name
        integer(c_int64_t), intent(in), target, contiguous :: a(:, :)
        call lo_step_add_raw(step, name, int(LO_INT64), c_shape(shape(a)), &
                             c_loc_or_null(c_loc(a), size(a)))
    end subroutine add_i64_2

    ! The C-order shape of a Fortran array of this shape (the extents reversed).
    function c_shape(fshape) result(s)
        integer, intent(in) :: fshape(:)
        integer(c_int64_t) :: s(size(fshape))
        integer :: i
        do i = 1, size(fshape)
            s(i) = int(fshape(size(fshape) + 1 - i), c_int64_t)
        end do
    end function c_shape

    ! An empty array may have any address; the C client wants NULL or a valid one.
    function c_loc_or_null(p, n) result(q)
        type(c_ptr), intent(in) :: p
        integer, intent(in) :: n
        type(c_ptr) :: q
        q = p
        if (n == 0) q = c_null_ptr
    end function c_loc_or_null

end module lightning_online
