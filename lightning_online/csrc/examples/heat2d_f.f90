! heat2d_f.f90 - the 2-D heat solver of heat2d.c in Fortran, streaming through the Fortran
! module of the C client (lightning_online.f90). One process (no MPI: the mpich wheel ships no
! Fortran bindings); its stream is bit for bit that of heat2d.c on any number of ranks, and so
! that of the Python solver lightning_online.solvers.heat2d.Heat2D:
!
!   u_t = alpha (u_xx + u_yy) on (0, 1)^2, nx * ny interior nodes, Dirichlet walls;
!   theta = (T0, T_left, T_right, T_bottom, T_top) from LIGHTNING_ONLINE_PARAMETERS;
!   per output step k = 1..n_steps, fields "x" float32 (6,) = [theta / scale..., k / n_steps]
!   and "y" float32 (ny * nx,) = interior field / scale, C order (ny, nx).
!
! Build and run:
!   python -m lightning_online.client --build-example heat2d_f -o build/heat2d_f
!   (or: gfortran -O2 -ffp-contract=off -J build $INC/lightning_online.f90 heat2d_f.f90 \
!        $INC/lightning_online.c -o build/heat2d_f, INC=$(python -m lightning_online.client --include))
!   ExternalSolver(["build/heat2d_f", "--nx", "32"], launcher="direct", ...)
!
! Options: --nx N --ny N --n-steps N --alpha A --t-end T --normalize S|none --safety F
! (defaults as Heat2D: 32, 32, 100, 1, 0.2 / alpha, 500, 0.9); --fail-at K makes the run abort
! with an ERROR message instead of sending step index K.
!
! Exit codes: 0 done; 1 bad options or parameters (an ERROR message was sent); 2 no connection
! to the training process, or the connection broke mid-run.
program heat2d_f
    use lightning_online
    implicit none

    integer :: nx = 32, ny = 32, n_steps = 100, fail_at = -1
    real(c_double) :: alpha = 1.0d0, scale = 500.0d0, safety = 0.9d0, t_end = 0.0d0, t_final
    logical :: have_t_end = .false.
    real(c_double) :: theta(5)
    character(len=256) :: error
    type(c_ptr) :: client
    type(lo_step) :: step
    real(c_double), allocatable :: u(:, :), tmp(:, :)
    real(c_float), allocatable, target :: y(:)
    real(c_float), target :: x(6)
    real(c_double) :: hx, hy, dt_max, dt_out, ms, dt, rx, ry, rc, v
    integer :: m, k, s, i, j, rc_

    client = lo_connect()
    if (.not. c_associated(client)) then
        write (0, '(a)') 'heat2d_f: '//lo_error_message()
        stop 2, quiet=.true.
    end if
    error = ''
    call configure(error)
    if (len_trim(error) > 0) then
        write (0, '(a)') trim(error)
        rc_ = lo_abort(client, trim(error))
        stop 1, quiet=.true.
    end if

    ! Sub-steps per output step and the scalars of Heat2D._run, operation by operation.
    hx = 1.0d0/real(nx + 1, c_double)
    hy = 1.0d0/real(ny + 1, c_double)
    dt_max = 1.0d0/(2.0d0*alpha*(1.0d0/(hx*hx) + 1.0d0/(hy*hy)))
    dt_out = t_final/real(n_steps, c_double)
    ms = dt_out/(safety*dt_max)
    ms = aint(ms) + merge(1.0d0, 0.0d0, ms > aint(ms)) ! ceil, for ms >= 0
    m = 1
    if (ms >= 1.0d0) m = int(ms)
    dt = t_final/real(n_steps, c_double)/real(m, c_double)
    rx = alpha*dt*(real(nx + 1, c_double)*real(nx + 1, c_double))
    ry = alpha*dt*(real(ny + 1, c_double)*real(ny + 1, c_double))
    rc = 1.0d0 - 2.0d0*rx - 2.0d0*ry

    ! u(i, j): column i = 0..nx+1, row j = 0..ny+1 (walls at 0 and n+1); in memory the rows of
    ! heat2d.c's U(j, i).
    allocate (u(0:nx + 1, 0:ny + 1), tmp(nx, ny), y(nx*ny))
    do j = 0, ny + 1
        u(1:nx, j) = theta(1)
        u(0, j) = theta(2)
        u(nx + 1, j) = theta(3)
    end do
    u(1:nx, 0) = theta(4)
    u(0, 0) = 0.5d0*(theta(2) + theta(4)) ! corners: unused
    u(nx + 1, 0) = 0.5d0*(theta(3) + theta(4))
    u(1:nx, ny + 1) = theta(5)
    u(0, ny + 1) = 0.5d0*(theta(2) + theta(5))
    u(nx + 1, ny + 1) = 0.5d0*(theta(3) + theta(5))

    do i = 1, 5
        x(i) = real(theta(i)/scale, c_float)
    end do
    do k = 1, n_steps
        if (k - 1 == fail_at) then
            write (error, '(a,i0)') 'failing on purpose at step ', fail_at
            rc_ = lo_abort(client, trim(error))
            stop 1, quiet=.true.
        end if
        do s = 1, m
            ! tmp = rx (E + W) + ry (N + S) + rc C in numpy's order, from the old field.
            do j = 1, ny
                do i = 1, nx
                    v = (u(i + 1, j) + u(i - 1, j))*rx
                    v = v + ry*(u(i, j + 1) + u(i, j - 1))
                    tmp(i, j) = v + rc*u(i, j)
                end do
            end do
            u(1:nx, 1:ny) = tmp
        end do
        do j = 1, ny
            do i = 1, nx
                y((j - 1)*nx + i) = real(u(i, j)/scale, c_float)
            end do
        end do
        x(6) = real(real(k, c_double)/real(n_steps, c_double), c_float)
        call lo_step_clear(step)
        call lo_step_add(step, 'x', x)
        call lo_step_add(step, 'y', y)
        if (lo_step_send(client, step) /= 0) then
            write (0, '(a)') 'heat2d_f: '//lo_error_message()
            stop 2, quiet=.true.
        end if
    end do
    if (lo_close(client) /= 0) then
        write (0, '(a)') 'heat2d_f: '//lo_error_message()
        stop 2, quiet=.true.
    end if

contains

    ! Read the options and the parameters; on error, the message in err.
    subroutine configure(err)
        character(len=*), intent(inout) :: err
        character(len=256) :: opt, val
        integer :: i, n, ios
        i = 1
        do while (i <= command_argument_count())
            call get_command_argument(i, opt)
            if (i + 1 > command_argument_count()) then
                err = 'heat2d_f: option '//trim(opt)//' needs a value'
                return
            end if
            call get_command_argument(i + 1, val)
            ios = 0
            select case (trim(opt))
            case ('--nx')
                read (val, *, iostat=ios) nx
            case ('--ny')
                read (val, *, iostat=ios) ny
            case ('--n-steps')
                read (val, *, iostat=ios) n_steps
            case ('--fail-at')
                read (val, *, iostat=ios) fail_at
            case ('--alpha')
                read (val, *, iostat=ios) alpha
            case ('--t-end')
                read (val, *, iostat=ios) t_end
                have_t_end = .true.
            case ('--safety')
                read (val, *, iostat=ios) safety
            case ('--normalize')
                if (trim(val) == 'none') then
                    scale = 1.0d0
                else
                    read (val, *, iostat=ios) scale
                    if (ios == 0 .and. .not. scale > 0) ios = 1
                end if
            case default
                err = 'heat2d_f: unknown option '//trim(opt)//' (expected --nx, --ny, '// &
                      '--n-steps, --alpha, --t-end, --normalize, --safety, --fail-at)'
                return
            end select
            if (ios /= 0) then
                err = 'heat2d_f: bad value '//trim(val)//' for '//trim(opt)
                return
            end if
            i = i + 2
        end do
        if (nx < 1 .or. ny < 1 .or. n_steps < 1 .or. real(nx, c_double)*ny > 1d9) then
            err = 'heat2d_f: nx, ny and n_steps must be positive (and nx * ny <= 1e9)'
            return
        end if
        if (.not. (alpha > 0 .and. alpha <= huge(alpha))) then
            err = 'heat2d_f: alpha must be > 0'
            return
        end if
        if (.not. (safety > 0 .and. safety <= 1)) then
            err = 'heat2d_f: safety must be in (0, 1]'
            return
        end if
        if (have_t_end .and. .not. (t_end > 0 .and. t_end <= huge(t_end))) then
            err = 'heat2d_f: t_end must be > 0'
            return
        end if
        t_final = 0.2d0/alpha
        if (have_t_end) t_final = t_end
        n = lo_get_parameters(theta)
        if (n /= 5) then
            if (n < 0) then
                err = 'heat2d_f: '//lo_error_message()
            else
                write (err, '(a,i0)') 'heat2d_f: expected 5 parameters (T0, T_left, '// &
                    'T_right, T_bottom, T_top), got ', n
            end if
            return
        end if
        do i = 1, 5
            if (.not. (abs(theta(i)) <= huge(theta(i)))) then
                write (err, '(a,i0,a)') 'heat2d_f: parameter ', i - 1, ' is not finite'
                return
            end if
        end do
    end subroutine configure

end program heat2d_f
